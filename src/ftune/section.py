"""The base of every config section: unknown keys are errors, and a value set later is validated too.

Apart from ftune.schema because the schema builds its `method:` union from the method modules (ftune.methods), which
subclass this: importing it from the schema would make the two import each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
