"""Supervision: N HTTP worker processes kept alive, replaced when they die, given up on
(visibly) when they keep dying."""
