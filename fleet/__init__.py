"""The fleet's server side (`cm-fleet`): ingest of every agent's MQTT messages, the historian, and (later) the
dashboard. Imports `edge` and `firmware_bridge`, never the reverse."""
