"""The shipped workflows. Importing this package registers them (see shared.workflow)."""
