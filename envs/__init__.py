"""Environments. Importing this package registers the Miconi maze with gymnasium as ``metarl/MiconiMaze-v0``."""

from gymnasium.envs.registration import register, registry

MICONI_MAZE_ID = "metarl/MiconiMaze-v0"

# Guard: importing twice (or reloading) must not re-register, which gymnasium warns about.
if MICONI_MAZE_ID not in registry:
    register(id=MICONI_MAZE_ID, entry_point="envs.maze:MiconiMaze")
