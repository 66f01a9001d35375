// The Go oracle for modelyard's template tests: Go's own text/template, with the funcs and the
// values Ollama gives its templates.
//
// It reads one JSON request per line on stdin and writes one JSON answer per line on stdout, so a
// test session starts it once and sends every case through the same process.
//
//	{"template": T, "data": D, "today": "2024-05-01"}
//	    parse T as Ollama does (missingkey=zero, Ollama's funcs) and execute it on D, where JSON
//	    numbers without '.', 'e' or 'E' are Go ints, the others float64, {"__json_list__": [..]}
//	    is a slice and {"__json_map__": {..}} a map whose String() method prints their JSON.
//	{"template": T, "values": V, "today": ...}
//	    execute T the way Ollama's template.Execute does for V = {messages, tools, prompt, suffix,
//	    think, think_level, is_think_set}: messages and tools as Ollama's API takes them; messages
//	    are collated, templates without .Messages run in the legacy System/Prompt/Response way.
//
//	answer: {"output": "...", "error": "", "stage": ""}, stage "parse" or "exec" when error is set.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type request struct {
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
	Values   *values         `json:"values"`
	Today    string          `json:"today"`
}

type answer struct {
	Output string `json:"output"`
	Error  string `json:"error"`
	Stage  string `json:"stage"`
}

// --- values shaped like Ollama's --------------------------------------------------------------------------

type values struct {
	Messages   []apiMessage `json:"messages"`
	Tools      oTools       `json:"tools"`
	Prompt     string       `json:"prompt"`
	Suffix     string       `json:"suffix"`
	Think      bool         `json:"think"`
	ThinkLevel string       `json:"think_level"`
	IsThinkSet bool         `json:"is_think_set"`
}

type apiMessage struct {
	Role       string      `json:"role"`
	Content    string      `json:"content"`
	Thinking   string      `json:"thinking"`
	Images     []imageData `json:"images"`
	ToolCalls  []oToolCall `json:"tool_calls"`
	ToolName   string      `json:"tool_name"`
	ToolCallID string      `json:"tool_call_id"`
}

type imageData []byte

// tMessage is what a template sees of a message.
type tMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []imageData
	ToolCalls  []oToolCall
	ToolName   string
	ToolCallID string
}

type oToolCall struct {
	ID       string        `json:"id,omitempty"`
	Function oCallFunction `json:"function"`
}

type oCallFunction struct {
	Index     int    `json:"index"`
	Name      string `json:"name"`
	Arguments oArgs  `json:"arguments"`
}

type oArgs map[string]any

func (a oArgs) String() string {
	if a == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type oTools []oTool

func (t oTools) String() string {
	b, _ := json.Marshal([]oTool(t))
	return string(b)
}

type oTool struct {
	Type     string        `json:"type"`
	Items    any           `json:"items,omitempty"`
	Function oToolFunction `json:"function"`
}

func (t oTool) String() string { return marshal(t) }

type oToolFunction struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Parameters  oToolParams `json:"parameters"`
}

func (t oToolFunction) String() string { return marshal(t) }

type oToolParams struct {
	Type       string   `json:"type"`
	Defs       any      `json:"$defs,omitempty"`
	Items      any      `json:"items,omitempty"`
	Required   []string `json:"required,omitempty"`
	Properties oProps   `json:"properties"`
}

func (t oToolParams) String() string { return marshal(t) }

type oProps map[string]oToolProperty

func (p oProps) String() string {
	if p == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]oToolProperty(p))
	return string(b)
}

type oToolProperty struct {
	AnyOf       []oToolProperty `json:"anyOf,omitempty"`
	Type        oPropType       `json:"type,omitempty"`
	Items       any             `json:"items,omitempty"`
	Description string          `json:"description,omitempty"`
	Enum        []any           `json:"enum,omitempty"`
	Properties  oProps          `json:"properties,omitempty"`
	Required    []string        `json:"required,omitempty"`
}

func (tp oToolProperty) toTypeScript() string {
	if len(tp.AnyOf) > 0 {
		var types []string
		for _, a := range tp.AnyOf {
			types = append(types, a.toTypeScript())
		}
		return strings.Join(types, " | ")
	}
	if len(tp.Type) == 0 {
		return "any"
	}
	var types []string
	for _, t := range tp.Type {
		switch t {
		case "string":
			types = append(types, "string")
		case "number", "integer":
			types = append(types, "number")
		case "boolean":
			types = append(types, "boolean")
		case "array":
			types = append(types, "any[]")
		case "object":
			types = append(types, "Record<string, any>")
		case "null":
			types = append(types, "null")
		default:
			types = append(types, "any")
		}
	}
	return strings.Join(types, " | ")
}

type oPropType []string

func (pt *oPropType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt oPropType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt oPropType) String() string {
	switch len(pt) {
	case 0:
		return ""
	case 1:
		return pt[0]
	}
	return fmt.Sprintf("%v", []string(pt))
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func marshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// --- generic data ---------------------------------------------------------------------------------------

type jsonList []any

func (l jsonList) String() string { return marshal([]any(l)) }

type jsonMap map[string]any

func (m jsonMap) String() string { return marshal(map[string]any(m)) }

func convert(v any) (any, error) {
	switch v := v.(type) {
	case json.Number:
		s := v.String()
		if strings.ContainsAny(s, ".eE") {
			return v.Float64()
		}
		n, err := v.Int64()
		return int(n), err
	case []any:
		// A fresh slice whose capacity is its length: the decoder's spare capacity would let
		// `slice` reach past the end, which no Python list can mirror.
		out := make([]any, len(v))
		for i := range v {
			c, err := convert(v[i])
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case map[string]any:
		if inner, ok := v["__json_list__"]; ok && len(v) == 1 {
			c, err := convert(inner)
			if err != nil {
				return nil, err
			}
			return jsonList(c.([]any)), nil
		}
		if inner, ok := v["__json_map__"]; ok && len(v) == 1 {
			c, err := convert(inner)
			if err != nil {
				return nil, err
			}
			return jsonMap(c.(map[string]any)), nil
		}
		for k := range v {
			c, err := convert(v[k])
			if err != nil {
				return nil, err
			}
			v[k] = c
		}
		return v, nil
	}
	return v, nil
}

// --- Ollama's template semantics, written again for the oracle ---------------------------------------------

func funcs(today time.Time) template.FuncMap {
	return template.FuncMap{
		"json": func(v any) string {
			b, _ := json.Marshal(v)
			return string(b)
		},
		"currentDate": func(args ...string) string { return today.Format("2006-01-02") },
		"yesterdayDate": func(args ...string) string {
			return today.AddDate(0, 0, -1).Format("2006-01-02")
		},
		"toTypeScriptType": func(v any) string {
			if p, ok := v.(oToolProperty); ok {
				return p.toTypeScript()
			}
			return "any"
		},
	}
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
		return names
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil
		}
		return identifiers(n.Pipe)
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.IfNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.RangeNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.WithNode:
		return branchIdentifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
		return names
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func branchIdentifiers(b *parse.BranchNode) []string {
	names := identifiers(b.Pipe)
	names = append(names, identifiers(b.List)...)
	if b.ElseList != nil {
		names = append(names, identifiers(b.ElseList)...)
	}
	return names
}

func vars(t *template.Template) []string {
	var out []string
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		for _, n := range tt.Root.Nodes {
			for _, id := range identifiers(n) {
				out = append(out, strings.ToLower(id))
			}
		}
	}
	return out
}

// cutAfterResponse removes every node that follows the first {{ .Response }} field, walking the tree in
// the order Ollama's deleteNode does; a branch whose list is cut away entirely cannot be kept, which is
// an error (Ollama panics there).
func cutAfterResponse(root *parse.ListNode) (*parse.ListNode, error) {
	cut := false
	var walk func(n parse.Node) (parse.Node, error)
	walk = func(n parse.Node) (parse.Node, error) {
		if f, ok := n.(*parse.FieldNode); ok && contains(f.Ident, "Response") {
			cut = true // kept even after the cut, as Ollama's predicate does
			return n, nil
		}
		if cut {
			return nil, nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				k, err := walk(c)
				if err != nil {
					return nil, err
				}
				if k != nil {
					nodes = append(nodes, k)
				}
			}
			t.Nodes = nodes
			return t, nil
		case *parse.IfNode:
			return t, walkBranch(&t.BranchNode, walk)
		case *parse.WithNode:
			return t, walkBranch(&t.BranchNode, walk)
		case *parse.RangeNode:
			return t, walkBranch(&t.BranchNode, walk)
		case *parse.ActionNode:
			p, err := walk(t.Pipe)
			if err != nil || p == nil {
				return nil, err
			}
			t.Pipe = p.(*parse.PipeNode)
			return t, nil
		case *parse.PipeNode:
			var cmds []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					k, err := walk(a)
					if err != nil {
						return nil, err
					}
					if k != nil {
						args = append(args, k)
					}
				}
				if len(args) == 0 {
					return nil, nil
				}
				c.Args = args
				cmds = append(cmds, c)
			}
			if len(cmds) == 0 {
				return nil, nil
			}
			t.Cmds = cmds
			return t, nil
		}
		return n, nil
	}
	n, err := walk(root)
	if err != nil {
		return nil, err
	}
	return n.(*parse.ListNode), nil
}

func walkBranch(b *parse.BranchNode, walk func(parse.Node) (parse.Node, error)) error {
	l, err := walk(b.List)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("template: the {{ .Response }} cut leaves a branch without a body")
	}
	b.List = l.(*parse.ListNode)
	if b.ElseList != nil {
		e, err := walk(b.ElseList)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("template: the {{ .Response }} cut leaves a branch without a body")
		}
		b.ElseList = e.(*parse.ListNode)
	}
	return nil
}

func collate(msgs []apiMessage) (string, []*tMessage) {
	var system []string
	var out []*tMessage
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, &tMessage{
			Role: m.Role, Content: m.Content, Thinking: m.Thinking, Images: m.Images,
			ToolCalls: m.ToolCalls, ToolName: m.ToolName, ToolCallID: m.ToolCallID,
		})
	}
	return strings.Join(system, "\n\n"), out
}

func executeOllama(text string, v values, fm template.FuncMap) answer {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(fm).Parse(text)
	if err != nil {
		return answer{Error: err.Error(), Stage: "parse"}
	}
	vs := vars(tmpl)
	if !contains(vs, "messages") && !contains(vs, "response") {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, &parse.ActionNode{
			NodeType: parse.NodeAction,
			Pipe: &parse.PipeNode{NodeType: parse.NodePipe, Cmds: []*parse.CommandNode{{
				NodeType: parse.NodeCommand,
				Args:     []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}},
			}}},
		})
	}
	system, messages := collate(v.Messages)
	var b bytes.Buffer
	run := func(t *template.Template, data map[string]any) error {
		return t.Execute(&b, data)
	}
	base := func() map[string]any {
		return map[string]any{"Think": v.Think, "ThinkLevel": v.ThinkLevel, "IsThinkSet": v.IsThinkSet}
	}
	if v.Prompt != "" && v.Suffix != "" {
		d := base()
		d["Prompt"], d["Suffix"], d["Response"] = v.Prompt, v.Suffix, ""
		if err := run(tmpl, d); err != nil {
			return answer{Error: err.Error(), Stage: "exec"}
		}
		return answer{Output: b.String()}
	}
	if contains(vs, "messages") {
		d := base()
		var tools oTools = v.Tools
		d["System"], d["Messages"], d["Tools"], d["Response"] = system, messages, tools, ""
		if err := run(tmpl, d); err != nil {
			return answer{Error: err.Error(), Stage: "exec"}
		}
		return answer{Output: b.String()}
	}
	system = ""
	var prompt, response string
	legacy := func(t *template.Template) error {
		d := base()
		d["System"], d["Prompt"], d["Response"] = system, prompt, response
		err := run(t, d)
		system, prompt, response = "", "", ""
		return err
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := legacy(tmpl); err != nil {
					return answer{Error: err.Error(), Stage: "exec"}
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := legacy(tmpl); err != nil {
					return answer{Error: err.Error(), Stage: "exec"}
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	root, err := cutAfterResponse(tmpl.Tree.Root.CopyList())
	if err != nil {
		return answer{Error: err.Error(), Stage: "exec"}
	}
	// As Ollama does: the cut tree runs in a bare template, without its funcs or missingkey=zero.
	cut, err := template.New("").AddParseTree("", &parse.Tree{Root: root})
	if err != nil {
		return answer{Error: err.Error(), Stage: "exec"}
	}
	if err := legacy(cut); err != nil {
		return answer{Error: err.Error(), Stage: "exec"}
	}
	return answer{Output: b.String()}
}

func handle(line []byte) answer {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return answer{Error: "oracle: bad request: " + err.Error(), Stage: "request"}
	}
	today := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	if req.Today != "" {
		t, err := time.Parse("2006-01-02", req.Today)
		if err != nil {
			return answer{Error: "oracle: bad today: " + err.Error(), Stage: "request"}
		}
		today = t
	}
	fm := funcs(today)
	if req.Values != nil {
		return executeOllama(req.Template, *req.Values, fm)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(fm).Parse(req.Template)
	if err != nil {
		return answer{Error: err.Error(), Stage: "parse"}
	}
	var data any
	if len(req.Data) > 0 {
		dec := json.NewDecoder(bytes.NewReader(req.Data))
		dec.UseNumber()
		if err := dec.Decode(&data); err != nil {
			return answer{Error: "oracle: bad data: " + err.Error(), Stage: "request"}
		}
		if data, err = convert(data); err != nil {
			return answer{Error: "oracle: bad data: " + err.Error(), Stage: "request"}
		}
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		return answer{Output: b.String(), Error: err.Error(), Stage: "exec"}
	}
	return answer{Output: b.String()}
}

func main() {
	in := bufio.NewReader(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for {
		line, err := in.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			_ = enc.Encode(handle(line))
			_ = out.Flush()
		}
		if err != nil {
			return
		}
	}
}
