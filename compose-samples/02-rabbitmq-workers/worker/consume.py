# consume: placeholder worker script
