// Command gotmpl renders an Ollama TEMPLATE with Go's text/template, the way Ollama does, so tests
// can compare a Modelfile template with the Hugging Face chat template it stands for.
//
// Input on stdin: {"template": "...", "data": {...}, "infer_tags": false}. The data mirrors the
// values Ollama passes to a messages-style template (.System, .Messages, .Think, .IsThinkSet,
// .Prompt, .Response); system messages are collated into .System as Ollama's template.Execute does.
// Output: the rendered text, or with "infer_tags" the thinking tags Ollama would infer, as JSON.
// Standard library only; nothing here is copied from Ollama.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Message is the part of Ollama's api.Message a chat template reads.
type Message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking"`
}

// Values mirrors the fields Ollama exposes to a template.
type Values struct {
	System     string    `json:"system"`
	Messages   []Message `json:"messages"`
	Think      bool      `json:"think"`
	IsThinkSet bool      `json:"is_think_set"`
	Prompt     string    `json:"prompt"`
	Response   string    `json:"response"`
}

type input struct {
	Template  string `json:"template"`
	Data      Values `json:"data"`
	InferTags bool   `json:"infer_tags"`
}

// funcs are the template functions Ollama registers.
var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate": func(args ...string) string {
		return time.Now().Format("2006-01-02")
	},
}

// collate joins the system messages into one system text and merges consecutive messages of the
// same role with a blank line between them, as Ollama does before rendering.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func render(tmpl *template.Template, v Values, w io.Writer) error {
	system, messages := collate(v.Messages)
	if v.System != "" {
		system = v.System
	}
	return tmpl.Execute(w, map[string]any{
		"System":     system,
		"Messages":   messages,
		"Prompt":     v.Prompt,
		"Response":   v.Response,
		"Think":      v.Think,
		"IsThinkSet": v.IsThinkSet,
	})
}

// children lists the nodes one level below n, in document order.
func children(n parse.Node) []parse.Node {
	var out []parse.Node
	switch x := n.(type) {
	case *parse.ListNode:
		if x != nil {
			out = append(out, x.Nodes...)
		}
	case *parse.BranchNode:
		out = append(out, x.Pipe, x.List)
		if x.ElseList != nil {
			out = append(out, x.ElseList)
		}
	case *parse.IfNode:
		out = append(out, &x.BranchNode)
	case *parse.RangeNode:
		out = append(out, &x.BranchNode)
	case *parse.WithNode:
		out = append(out, &x.BranchNode)
	case *parse.ActionNode:
		out = append(out, x.Pipe)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			out = append(out, x.Pipe)
		}
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			out = append(out, c)
		}
	case *parse.CommandNode:
		out = append(out, x.Args...)
	}
	return out
}

// usesField reports whether the field name appears anywhere under n.
func usesField(n parse.Node, name string) bool {
	if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == name {
		return true
	}
	for _, c := range children(n) {
		if usesField(c, name) {
			return true
		}
	}
	return false
}

// inferTags applies Ollama's documented heuristic: for each `.Thinking` inside a range over
// `.Messages`, the nearest enclosing list's first and last text nodes (trimmed) are the tags;
// the last such reference in document order wins.
func inferTags(root parse.Node) (string, string) {
	var opening, closing string
	var walk func(n parse.Node, path []parse.Node)
	walk = func(n parse.Node, path []parse.Node) {
		path = append(path, n)
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" {
			opening, closing = tagsAt(path, opening, closing)
		}
		for _, c := range children(n) {
			walk(c, path)
		}
	}
	walk(root, nil)
	return opening, closing
}

// tagsAt updates the tags for a `.Thinking` reached by path (root first).
func tagsAt(path []parse.Node, opening, closing string) (string, string) {
	if r := nearestRange(path); r == nil || !usesField(r.Pipe, "Messages") {
		return opening, closing
	}
	for i := len(path) - 1; i >= 0; i-- {
		l, ok := path[i].(*parse.ListNode)
		if !ok {
			continue
		}
		if t, ok := l.Nodes[0].(*parse.TextNode); ok {
			opening = strings.TrimSpace(t.String())
		}
		if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
			closing = strings.TrimSpace(t.String())
		}
		break
	}
	return opening, closing
}

func nearestRange(path []parse.Node) *parse.RangeNode {
	for i := len(path) - 1; i >= 0; i-- {
		if r, ok := path[i].(*parse.RangeNode); ok {
			return r
		}
	}
	return nil
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		return err
	}
	if in.InferTags {
		opening, closing := inferTags(tmpl.Root)
		return json.NewEncoder(os.Stdout).Encode(map[string]string{"opening": opening, "closing": closing})
	}
	return render(tmpl, in.Data, os.Stdout)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gotmpl:", err)
		os.Exit(1)
	}
}
