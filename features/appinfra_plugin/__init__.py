"""appinfra integration: ``ServerPlugin(server)`` gives an appinfra CLI app (its ``AppBuilder``) a
``serve`` command that runs the server, and stops the server when the app shuts down. Needs the
optional extra: ``pip install 'isolated_api[appinfra]'``."""
