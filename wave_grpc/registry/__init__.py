"""The upstream registry client, by concern: transport and retries, auth, the address policy, blob answers."""
