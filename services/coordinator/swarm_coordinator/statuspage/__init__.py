"""The swarm's public status page: a read-only HTTP page and its `/api/status` JSON, served by the coordinator.

history.py keeps the bounded, downsampled history (pure); api.py builds the JSON from a plain snapshot (pure);
server.py serves the page and the JSON; static/ holds the page itself (HTML, vanilla JS drawing inline SVG, CSS).
"""
