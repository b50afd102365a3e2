"""The launcher floor: the `swarm` command, `swarm host`, `swarm demo` and the supervision of service processes.

It sits on top: it may import the foundation (`swarm`) and every service (`swarm_*`); nothing imports it back.
"""
