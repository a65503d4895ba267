"""Memory and device policy: which device and dtype the engine runs on."""
