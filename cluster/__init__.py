"""Multi-machine mode (QUEUE_BACKEND=postgres): GPU workers and the bot's view of them."""
