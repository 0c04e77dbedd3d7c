"""Lightning modules, data modules and training commands."""
