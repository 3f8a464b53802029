"""`t_rolling` at version "2" (see tests.workflows_rolling)."""

from tests.workflows_rolling import define

define("2")
