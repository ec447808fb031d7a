"""Large binary payloads: an octet-stream upload (an image) handed to the main process as bytes,
without JSON or base64, and a large binary reply; over the pipes or through shared memory
(``.subprocess.with_shared_payloads``), with pickle or msgspec (its tests skip without
``pip install 'isolated_api[msgspec]'``)."""
