"""The main-process side: the relay that alone reads and writes the user's queues, one pipe endpoint
per HTTP worker, the supervisor that keeps the workers running, metrics, the ReplyBatcher."""
