"""The demo: SD-on and SD-off verl runs on this machine, their progress, reports and comparison."""
