package deploy

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parseYAML returns the non-empty documents of a YAML file as the generic
// values encoding/json understands (map[string]any, []any, scalars), so that
// decodeStrict can turn a document into a typed struct with unknown fields
// rejected. yaml.v3 refuses duplicate mapping keys.
func parseYAML(name, src string) ([]any, error) {
	dec := yaml.NewDecoder(strings.NewReader(src))
	var docs []any
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if v != nil {
			docs = append(docs, v)
		}
	}
}
