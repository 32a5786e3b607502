"""What runs on a device: the one-file runner, and the SSH/adb targets that use it."""
