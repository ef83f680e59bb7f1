"""The pure core: values, rules and the planner. Changes nothing on the disk; imports only
migrate.core (a few read a small text file the caller names: comfy the version, workflows the JSON)."""
