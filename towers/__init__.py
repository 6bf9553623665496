"""The user and creator towers (plain nn.Modules; nothing here imports Lightning)."""

from towers.model import CreatorTower, TowerConfig, TwoTower, UserTower

__all__ = ["CreatorTower", "TowerConfig", "TwoTower", "UserTower"]
