"""Running a function in a child process that can be stopped, and never outlives its parent."""
