"""The base of every JSON request body: values of the type sent (no "4" for 4, no true for 1) and no field
this server would not honour, as OpenAI's API answers both with a 400 that names the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
