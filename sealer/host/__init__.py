"""Host plumbing: the subprocess wrapper, private state files, durable-write checkpoints."""
