"""Everything that leaves the device: the publisher, the outbox that holds alerts until the broker has
them, the payloads and their JSON Schemas, agent health, Home Assistant discovery.
"""
