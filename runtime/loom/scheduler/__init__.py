"""The scheduler: cron and interval dispatch of goals and tasks, one dispatch per slot."""
