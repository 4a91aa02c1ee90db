"""Files written whole or not at all: JSON documents and directories."""
