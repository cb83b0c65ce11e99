"""Every layer's settings, built from a `Config` here and nowhere else.  No Trio, no I/O:
only the settings types of the layers (relay/settings.py, stages/settings.py).
"""

from __future__ import annotations

from trio_proxsmtp.config.model import Config
from trio_proxsmtp.stages.settings import MilterSettings

__all__ = ["milter_settings"]


def milter_settings(config: Config) -> MilterSettings:
    """The milter client's settings (stages/settings.py) from the configuration."""
    return MilterSettings(
        milters=config.milters,
        default_action=config.milter_default_action,
        connect_timeout=config.milter_connect_timeout,
        command_timeout=config.milter_command_timeout,
        content_timeout=config.milter_content_timeout,
    )
