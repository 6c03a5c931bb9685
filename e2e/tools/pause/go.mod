// The sandbox ("pause") program of the local node's pods; no dependencies.
module exo.dev/e2e/tools/pause

go 1.26.0
