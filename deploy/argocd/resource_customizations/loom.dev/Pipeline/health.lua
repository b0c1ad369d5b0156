-- Argo CD health check for loom.dev resources (Worker, Pipeline, RouterPolicy, Schedule, EvalSuite).
-- Maps kstatus (status.observedGeneration, conditions Ready / Reconciling / Stalled) to
-- Healthy / Progressing / Degraded (an EvalSuite whose run failed is Stalled: Degraded), and a
-- Schedule with spec.suspend to Suspended.
-- One script serves every kind; render.py copies it to resource_customizations/loom.dev/<Kind>/.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local function stale(c)
  return generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation
end

if obj.kind == "Schedule" and obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Schedule is suspended"
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end

local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" and not stale(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and not stale(ready) then
  if ready.status == "True" then
    hs.status = "Healthy"
    hs.message = describe(ready, "Ready")
    return hs
  end
  if ready.status == "False" and ready.reason ~= nil and ready.reason ~= "" then
    hs.status = "Degraded"
    hs.message = describe(ready, "Not ready")
    return hs
  end
end

hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
