// Renders an Ollama Modelfile TEMPLATE with Go's text/template, the engine Ollama itself uses.
// Usage: go run . TEMPLATE_FILE CHAT_JSON_FILE, the chat being {"messages": [...], "tools": [...]}.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"text/template"
)

// Message has the fields of Ollama's api.Message that chat templates read.
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	ToolCalls []ToolCall `json:"tool_calls"`
}

type ToolCall struct {
	Function struct {
		Name      string `json:"name"`
		Arguments JSON   `json:"arguments"`
	} `json:"function"`
}

type Tool struct {
	Type     string `json:"type"`
	Function JSON   `json:"function"`
}

// JSON prints as Ollama prints a tool's function and a call's arguments (their String methods call
// json.Marshal): compact, keys in the order given.
type JSON struct{ text string }

func (j *JSON) UnmarshalJSON(raw []byte) error {
	var out bytes.Buffer
	err := json.Compact(&out, raw)
	j.text = out.String()
	return err
}

func (j JSON) String() string { return j.text }

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		panic(err)
	}
	var chat struct {
		Messages []Message `json:"messages"`
		Tools    []Tool    `json:"tools"`
	}
	if err := json.Unmarshal(raw, &chat); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(string(text)))
	values := map[string]any{"Messages": chat.Messages, "Tools": chat.Tools}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
