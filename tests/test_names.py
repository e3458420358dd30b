"""DocumentNames: a name is taken for new only from a complete list."""

from __future__ import annotations

import uuid

from modi_sync.sync.names import DocumentNames


def test_a_user_read_without_a_list_is_not_asked_for_again_until_forgotten():
    names, user = DocumentNames(), uuid.uuid4()
    assert names.want(user)
    names.listed(user, None)  # too many names, or the reading failed
    assert not names.want(user)  # not on every load of theirs
    assert not names.is_new((user, "anything"))  # every open is an ordinary load
    names.forget(user)  # their last room left
    assert names.want(user)


def test_only_a_complete_list_says_new_and_names_heard_meanwhile_count():
    names, user = DocumentNames(), uuid.uuid4()
    assert not names.is_new((user, "a"))  # nothing read yet
    assert names.want(user) and not names.want(user)  # one reading at a time
    names.add((user, "heard"))
    assert not names.is_new((user, "a"))  # still being read
    names.listed(user, ["stored"])
    assert [names.is_new((user, n)) for n in ("stored", "heard", "a")] == [False, False, True]
    names.forget_all()
    assert not names.is_new((user, "a"))
