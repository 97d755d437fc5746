"""What `nso-repo agent bootstrap` refuses before it connects: paths systemd or agent.conf
would read differently, passwords agent.conf's reader would change."""

from __future__ import annotations

import pytest

from repo_server.cli.agent_bootstrap import BootstrapFailed, HostLayout, ini_safe


@pytest.mark.parametrize(
    "changes",
    [
        {"prefix": "opt/nso-agent"},
        {"prefix": "/opt/nso agent"},
        {"config_dir": "/etc/%n"},
        {"unit_dir": "/etc/../tmp"},
        {"host_root": "/srv/$HOME"},
        {"cli_password": "50%off"},
        {"cli_password": "pass #word"},
        {"cli_password": " leading"},
        {"cli_user": "ad\nmin"},
    ],
)
def test_values_that_would_not_read_back_are_refused(changes) -> None:
    with pytest.raises(BootstrapFailed):
        HostLayout(**changes).checked()


def test_ordinary_values_pass() -> None:
    layout = HostLayout(cli_password="S3cret!-with_symbols#1", prefix="/opt/nso-agent").checked()
    assert layout.config_file == "/etc/nso-agent/agent.conf"
    assert ini_safe("https://nso-repo.example.net:8420")
    assert not ini_safe("https://x ;y")
