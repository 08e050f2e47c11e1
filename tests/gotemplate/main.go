// Renders an Ollama Modelfile TEMPLATE with Go's text/template, the engine Ollama itself uses.
// Usage: go run . TEMPLATE_FILE MESSAGES_JSON_FILE
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

// Message has the fields of Ollama's api.Message that chat templates read.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		panic(err)
	}
	var messages []Message
	if err := json.Unmarshal(raw, &messages); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(string(text)))
	if err := tmpl.Execute(os.Stdout, map[string]any{"Messages": messages}); err != nil {
		panic(err)
	}
}
