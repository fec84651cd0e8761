"""The aiohttp gateway and the boot/shutdown of Ray and the actors. Nothing imports this package."""
