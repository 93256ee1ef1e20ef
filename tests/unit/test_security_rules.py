"""Who may connect, as rules: tokens beyond loopback, the published example refused, the world's own token."""

import socket

import pytest

from distautograd.transport.security import PUBLISHED_TOKENS, Security, peer_uid, token_matches


def test_listening_beyond_loopback_needs_a_token_of_ones_own():
    with pytest.raises(ValueError, match="without a shared token"):
        Security().check_bind("0.0.0.0")
    with pytest.raises(ValueError, match="printed in the documentation"):
        Security(token=next(iter(PUBLISHED_TOKENS))).check_bind("0.0.0.0")
    made = Security()
    made.make_world_token()
    with pytest.raises(ValueError, match="without a shared token"):
        made.check_bind("10.1.2.3")  # a world's own token only ever guards loopback
    Security(token="a-secret-of-my-own").check_bind("0.0.0.0")
    Security().check_bind("127.0.0.1")


def test_the_world_token_is_handed_out_only_when_it_was_made_not_configured():
    made = Security()
    made.make_world_token()
    assert made.token and made.generated and made.welcome_token() == made.token
    assert Security(token="configured").welcome_token() == ""
    joining = Security()
    joining.adopt_world_token(made.token)
    assert joining.token == made.token and not joining.configured_token
    configured = Security(token="configured")
    configured.adopt_world_token("something else")
    assert configured.token == "configured"


def test_token_comparison_refuses_missing_tokens():
    assert token_matches("x", "x") and not token_matches("x", "y")
    assert not token_matches("", None) and not token_matches("", "")


def test_peer_credentials_name_the_user_at_the_other_end():
    import os

    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert peer_uid(a) == os.getuid()
    finally:
        a.close()
        b.close()
    tcp = socket.socket()
    try:
        assert peer_uid(tcp) is None
    finally:
        tcp.close()
