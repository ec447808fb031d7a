"""The pieces both sides share: wire format (framing), codecs, configuration, errors, messages,
the server spec and recipe, readiness rules. Imports nothing else of the library."""
