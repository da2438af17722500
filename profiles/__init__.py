"""YAML profiles shipped with numatune: engines/, models/, machines/."""
