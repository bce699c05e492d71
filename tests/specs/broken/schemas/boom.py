"""An output-schema module that fails on import (for the corpus)."""

raise RuntimeError("boom: this schema module is broken on purpose")
