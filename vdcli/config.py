"""The base of every recipe section: plain typed data, validated when a recipe is loaded.

Each model file defines its own config (``ViTConfig`` in ``models/vit.py`` and so on) on this
base, and ``recipe.py`` assembles them into recipes. ``extra="forbid"`` is what turns a typo in
a recipe into an error that names the key instead of a silently ignored setting.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
