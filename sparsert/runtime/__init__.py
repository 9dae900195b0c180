"""What runs and what is kept: the kernel objects (device-neutral, holding a launcher), the one
cache, building through it, and device queries."""
