"""Guest-physical RAM and the guest kernel's allocators."""
