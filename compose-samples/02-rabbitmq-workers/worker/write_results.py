# write_results: placeholder worker script
