"""Access control: whitelist, registry users, tokens, lockout.

:func:`zmirror.auth.build.build_access` assembles the parts from the
configuration into an :class:`~zmirror.auth.build.AccessControl`.  The stores
(``zmirror.db``) only hold rows: the whitelist matcher
(:class:`~zmirror.auth.whitelist.Whitelist`) and password hashing
(:class:`~zmirror.auth.users.UserAccounts`) live here, above them.
"""
