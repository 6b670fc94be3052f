"""Who the caller is: accounts and password hashing (`users`), bearer tokens and their
revocation (`tokens`)."""
