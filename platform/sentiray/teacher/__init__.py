"""The teacher: prompts, response parsing, backends and the Ray Data rationale pipeline."""
