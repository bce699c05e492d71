"""user.profile keeps known users' profiles (the catalog and log are resources): the same profile as a fresh
build, unknown users never kept, at most `memo` of them."""

from __future__ import annotations

import asyncio

from llmrec.data import generate_demo, make_dataset
from llmrec.nodes.user import Profile, ProfileConfig


def test_profiles_are_kept_per_known_user_and_bounded():
    d = generate_demo(seed=7, n_users=40)
    ds = make_dataset("demo", d.catalog, d.interactions, "user", seed=0)
    catalog, log = ds.catalog, ds.train
    memo, fresh = Profile(ProfileConfig(memo=3)), Profile(ProfileConfig(memo=0))

    def run(node, user):
        return asyncio.run(node.run(catalog=catalog, interactions=log, user_id=user))

    users = [f"u{i}" for i in range(1, 8)]
    for user in users + users:
        assert run(memo, user) == run(fresh, user)
    kept = memo._memo.peek((catalog, log))
    assert list(kept) == users[-3:]  # the three used last
    assert run(memo, "u7") is run(memo, "u7")  # a kept profile is shared (values are frozen)
    assert not run(memo, "stranger").known and "stranger" not in kept
    assert fresh._memo.peek((catalog, log)) is None
