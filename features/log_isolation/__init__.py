"""Log isolation: everything the HTTP child writes goes to its own file."""
