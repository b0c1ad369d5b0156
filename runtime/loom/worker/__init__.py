"""Workers: the runtime that takes tasks off the bus, and the engines that do them."""
