"""How messages cross between the HTTP workers and the main process: pickle (default) or msgspec. Needs the
optional extra (its tests skip without it): ``pip install 'isolated_api[msgspec]'``."""
