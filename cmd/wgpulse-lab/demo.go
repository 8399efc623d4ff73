package main

import (
	"io"

	"github.com/alecthomas/kingpin/v2"
)

type demoCommand struct{ cmd *kingpin.CmdClause }

func addDemoCommand(app *kingpin.Application) *demoCommand {
	return &demoCommand{cmd: app.Command("demo", "Build the lab, run agents, play a fault timeline.")}
}

func (d *demoCommand) run(prefix string, stdout, stderr io.Writer) int { return 1 }
