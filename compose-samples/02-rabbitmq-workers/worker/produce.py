# produce: placeholder worker script
