"""Supervision: HTTP workers replaced when they die, given up on (visibly) when they keep dying."""
